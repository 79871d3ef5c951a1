"""Paths: where things live on a node. A leaf: the spec checks backup.dir against these, and node, render,
verify and the templates read them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paths:
    """Where things live on a node."""

    home: str = "/opt/etcd"
    data_dir: str = "/opt/etcd/data"
    wal_dir: str = "/opt/etcd/wal"
    ssl: str = "/etc/ssl/etcd"
    ca: str = "/etc/ssl/etcd/ca.crt"
    cert: str = "/etc/ssl/etcd/etcd.crt"
    key: str = "/etc/ssl/etcd/etcd.key"
    crl: str = "/etc/ssl/etcd/crl.der"  # the revoked certificates; etcd reads it on every new connection
    options: str = "/etc/etcd/options.env"
    bin: str = "/usr/local/bin"
    member_config: str = "/etc/etcd/member.json"  # what etcd-seed-member needs to know of this node
    membership_env: str = "/opt/etcd/membership.env"  # written by etcd-seed-member when the node joins
    member_bin: str = "/usr/local/sbin/etcd-seed-member"
    # The node's jobs (templates/etcd_seed_node/), one module each, which member_bin runs.
    node_package: str = "/usr/local/lib/etcd-seed/etcd_seed_node"
    backup_bin: str = "/usr/local/sbin/etcd-seed-backup"
    promote_unit: str = "/etc/systemd/system/etcd-seed-promote.service"
    backup_unit: str = "/etc/systemd/system/etcd-backup.service"
    backup_timer: str = "/etc/systemd/system/etcd-backup.timer"
    defrag_unit: str = "/etc/systemd/system/etcd-defrag.service"
    defrag_timer: str = "/etc/systemd/system/etcd-defrag.timer"
    restore_scratch: str = "/opt/etcd/restore.tmp"  # a restore is built here, then renamed into place
    unit: str = "/etc/systemd/system/etcd.service"
    flannel_unit: str = "/etc/systemd/system/etcd-flannel-config.service"
    staged: str = "/var/lib/etcd-seed/seed"  # where cloud-init writes the seed's files for the install step
    version_file: str = "/var/lib/etcd-seed/version"  # the etcd release the install step last put in place
    # sha256 of the tarball and of each binary it installed: a boot with the same seed checks these
    # instead of unpacking the tarball again, and repairs a binary that a power loss left damaged.
    installed: str = "/var/lib/etcd-seed/installed.sha256"
    # The instance-id of the seed the install step last put in place; etcd-seed-report.service puts it into etcd.
    applied: str = "/var/lib/etcd-seed/applied"
    # Names the data device while the install step formats it: a cut mkfs leaves a disk that only this proves ours.
    formatting: str = "/var/lib/etcd-seed/formatting"
    # The filesystem UUID of the data disk that holds this member: a blank disk or another one under the device's
    # name (kernel names move between boots) is then refused, not formatted into an empty member.
    data_claim: str = "/var/lib/etcd-seed/data-disk"
    # On the data disk itself: the cluster token and member name it holds, so that no other member uses it.
    disk_owner: str = "/opt/etcd/.etcd-seed-member"
    cloud: str = "/var/lib/cloud"  # cloud-init's state: instances/<instance-id>/sem/ and scripts/runcmd
    report_unit: str = "/etc/systemd/system/etcd-seed-report.service"
    restoring: str = "/var/lib/etcd-seed/restoring"  # present while a restore moves its files into place
    # Present from the first file put in place that etcd reads only at start until etcd's (re)start is queued.
    restart_pending: str = "/var/lib/etcd-seed/restart-pending"
    boot_unit: str = "/etc/systemd/system/etcd-seed-boot.service"  # converges to the seed before etcd starts
    clock_unit: str = "/etc/systemd/system/etcd-seed-clock.service"  # waits, bounded, for a synchronised clock
    auth_unit: str = "/etc/systemd/system/etcd-seed-auth.service"  # the first node: users, roles, auth on
    install_bin: str = "/usr/local/sbin/etcd-seed-install"
    flannel_bin: str = "/usr/local/sbin/etcd-flannel-config"


PATHS = Paths()
