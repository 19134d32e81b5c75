"""Write an Ascend rank table for this server (the reference hccl_tools.py arguments).

    python scripts/hccl_tools.py --device_num "[0,8)" [--visible_devices "0,1,2,3,4,5,6,7"] [--server_ip IP]
"""

import argparse
import socket
import sys
from pathlib import Path

from pangu_zoo.errors import PanguError
from pangu_zoo.parallel.rank_table import (
    device_ips,
    make_rank_table,
    parse_device_range,
    rank_table_name,
    write_json,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device_num", default="[0,8)")
    parser.add_argument("--visible_devices", default="0,1,2,3,4,5,6,7")
    parser.add_argument("--server_ip", default=None, help="default: this host's IP")
    parser.add_argument("--hccn_conf", default="/etc/hccn.conf")
    parser.add_argument("--out_dir", default=".")
    args = parser.parse_args(argv)
    try:
        visible = [int(v) for v in args.visible_devices.split(",") if v.strip()]
        devices = [visible[i] for i in parse_device_range(args.device_num) if i < len(visible)]
        server_ip = args.server_ip or socket.gethostbyname(socket.gethostname())
        table = make_rank_table(devices, device_ips(devices, Path(args.hccn_conf)), server_ip)
        path = write_json(table, Path(args.out_dir) / rank_table_name(devices, server_ip))
    except (PanguError, ValueError) as error:
        print(f"hccl_tools: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
