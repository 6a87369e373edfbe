#!/usr/bin/env bash
# Runs on the Packer builder instance: installs the natd RPM (and with it iptables)
# and enables the unit, so the image needs no network at first boot.
set -euo pipefail
sudo dnf install -y /tmp/natd.rpm
sudo systemctl enable natd.service
# The bake fails when a kernel module natd needs cannot be loaded on this kernel (a
# module built in loads as well): the netfilter pieces of its iptables-nft rules, the
# conntrack table and its netlink interface (conntrackd, the metrics), VXLAN (a pair's
# forwarding check). An image without one would come up unable to NAT or fail over.
for m in nf_tables nft_compat nft_chain_nat nf_nat nf_conntrack nf_conntrack_netlink \
  xt_MASQUERADE xt_nat xt_conntrack xt_addrtype xt_statistic vxlan; do
  sudo modprobe "$m" || { echo "provision: kernel module $m cannot be loaded" >&2; exit 1; }
done
# networkd leaves natd's routes and rules alone (the RPM's networkd.conf.d drop-in).
test -f /usr/lib/systemd/networkd.conf.d/natd.conf
rm -f /tmp/natd.rpm
sudo dnf clean all
# No SSH host keys or machine id baked into the image.
sudo rm -f /etc/ssh/ssh_host_*
sudo truncate -s 0 /etc/machine-id
