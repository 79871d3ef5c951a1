#!/usr/bin/python3 -IB
"""etcd-seed-member JOB: runs one job of the etcd_seed_node package beside it on this node (cli.py).

Generated: do not edit. -I: as root or etcd, no PYTHON* variable and no user site may change what runs;
-B: no bytecode beside the package, which the next seed may replace."""

import os
import sys

sys.path.insert(0, os.environ.get("ETCD_SEED_ROOT", "") + "/usr/local/lib/etcd-seed")

from etcd_seed_node.cli import main

sys.exit(main(sys.argv))
