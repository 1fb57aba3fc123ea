# %preun of wow: on erase ($1 = 0, not an upgrade), stop every wow service.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl stop wow-server.service wow-client.service \
        'wow-client@*.service' >/dev/null 2>&1 || :
fi
exit 0
