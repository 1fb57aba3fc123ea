# %pre of wow: the wow system user and group, before the files that belong
# to them are unpacked. $1: 1 on install, 2 on upgrade.
if ! getent group wow >/dev/null; then
    groupadd --system wow
fi
if ! getent passwd wow >/dev/null; then
    useradd --system --gid wow --home-dir /var/lib/wow --no-create-home \
        --shell /sbin/nologin --comment "wow webhook relay" wow
fi
exit 0
