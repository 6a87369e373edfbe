#!/usr/bin/env bash
# Runs on the Packer builder instance: installs the natd RPM (and with it iptables)
# and enables the unit, so the image needs no network at first boot.
set -euo pipefail
sudo dnf install -y /tmp/natd.rpm
sudo systemctl enable natd.service
rm -f /tmp/natd.rpm
sudo dnf clean all
# No SSH host keys or machine id baked into the image.
sudo rm -f /etc/ssh/ssh_host_*
sudo truncate -s 0 /etc/machine-id
