#!/usr/bin/env bash
# Installs vectl's systemd units, as root, and enables them:
#   - vectl-supervisor.service: `vectl supervise --all-roots` (crash state and
#     restart policies),
#   - vectl.service: `vectl host boot` at boot, `vectl host shutdown` at shutdown;
# and installs, without enabling them, the metrics units for Prometheus:
#   - vectl-metrics.socket (+ vectl-metrics@.service): `vectl stats --http` on
#     127.0.0.1:9469 for each scrape,
#   - vectl-metrics-textfile.timer (+ .service): node_exporter's textfile file.
# Without systemd (a container, say), starts the supervisor in the background
# instead (if it is not running) and says that VEs will not start at boot.
# Safe to run again.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -d /run/systemd/system ]; then
    changed=0 supervisor_changed=0
    for u in vectl.service vectl-supervisor.service vectl-metrics.socket \
        vectl-metrics@.service vectl-metrics-textfile.service vectl-metrics-textfile.timer; do
        if ! cmp -s "$here/systemd/$u" "/etc/systemd/system/$u"; then
            install -m 0644 "$here/systemd/$u" "/etc/systemd/system/$u"
            changed=1
            [ "$u" = vectl-supervisor.service ] && supervisor_changed=1
        fi
    done
    [ "$changed" = 1 ] && systemctl daemon-reload
    systemctl enable -q vectl-supervisor.service vectl.service
    # A restart drops the consoles it holds: only for a changed unit.
    if [ "$supervisor_changed" = 1 ]; then
        systemctl restart vectl-supervisor.service
    else
        systemctl start vectl-supervisor.service
    fi
    # RemainAfterExit: starting it now runs `host boot` once, which starts
    # only onboot VEs that are not running.
    systemctl start vectl.service
    exit 0
fi
if ! pgrep -f '^/usr/local/bin/vectl supervise --all-roots' >/dev/null; then
    setsid /usr/local/bin/vectl supervise --all-roots </dev/null >>/var/log/vectl-supervisor.log 2>&1 &
    echo "units.sh: no systemd: started the supervisor in the background (log: /var/log/vectl-supervisor.log); VEs marked --onboot start with \`vectl host boot\`"
fi
