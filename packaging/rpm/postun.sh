# %postun of wow: systemd forgets removed units; an upgrade ($1 >= 1)
# restarts what was running with the new binaries. The state in /var/lib
# and the wow user stay, as RPM packages usually leave them.
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart wow-server.service wow-client.service \
            'wow-client@*.service' >/dev/null 2>&1 || :
    fi
fi
exit 0
