"""etcd-seed's node side: the jobs a seed runs on its node, one module each, beside the etcd they serve.

Generated with the seed: do not edit. /usr/local/sbin/etcd-seed-member JOB runs one job (cli.py); each
job module declares, in its META, the unit that runs it, when, and how it retries, as cloud-init's cc_*
modules declare theirs. A node gets only the modules of the units its seed enables; transport.py holds
what every job shares: etcdctl calls over the node's own mutual TLS, checks on etcd's answers, refusals.
https://etcd.io/docs/v3.5/op-guide/runtime-configuration/
"""
