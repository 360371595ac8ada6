#!/bin/sh
# Builds a small root file system from Debian's static busybox: busybox init, an
# inittab that serves /var/www over HTTP on port 80 with busybox httpd, and the /etc
# basics. Used by the README's quick start and by the test suite.
#
#   busybox-rootfs.sh DIR        (DIR must not exist or be empty)
set -eu
dir=${1:?usage: busybox-rootfs.sh DIR}
bb=${BUSYBOX:-/bin/busybox}
if ! [ -x "$bb" ] || ! "$bb" --list-full >/dev/null 2>&1; then
    echo "busybox-rootfs.sh: $bb missing: apt-get install busybox-static" >&2
    exit 1
fi
if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    echo "busybox-rootfs.sh: $dir is not empty" >&2
    exit 1
fi
mkdir -p "$dir"
cd "$dir"
mkdir -p bin sbin usr/bin usr/sbin etc/init.d proc sys dev tmp root run var/www var/log var/tmp home
chmod 1777 tmp var/tmp
chmod 700 root
cp "$bb" bin/busybox
for app in $(bin/busybox --list-full); do
    [ "$app" = bin/busybox ] || [ -e "$app" ] || ln -s /bin/busybox "$app"
done

cat > etc/inittab <<'INIT'
::sysinit:/etc/init.d/rcS
::respawn:/usr/sbin/httpd -f -p 80 -h /var/www
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
INIT

cat > etc/init.d/rcS <<'RCS'
#!/bin/sh
# Each VE answers with its own name.
echo "hello from $(hostname)" > /var/www/index.html
RCS
chmod 755 etc/init.d/rcS

cat > etc/passwd <<'PW'
root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat > etc/group <<'GR'
root:x:0:
tty:x:5:
www-data:x:33:
nogroup:x:65534:
GR
cat > etc/shadow <<'SH'
root:*:19000:0:99999:7:::
SH
chmod 640 etc/shadow
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' > etc/hosts
printf 'NAME="busybox"\nID=busybox\nPRETTY_NAME="BusyBox (vectl test template)"\n' > etc/os-release
echo "placeholder" > var/www/index.html
