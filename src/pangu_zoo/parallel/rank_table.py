"""Ascend rank tables with the schema and arguments of the reference `hccl_tools.py` / `merge_hccl.py`.

Schema: {"version": "1.0", "server_count": "1", "server_list": [{"server_id": ip, "device":
[{"device_id", "device_ip", "rank_id"}...], "host_nic_ip": "reserve"}], "status": "completed"}, all strings.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from pangu_zoo.errors import ConfigError

HCCN_CONF = Path("/etc/hccn.conf")


def parse_device_range(text: str) -> list[int]:
    """'[0,8)' -> [0, ..., 7]; only [0,4), [4,8) and [0,8) fit one Ascend server's two groups."""
    match = re.fullmatch(r"\s*\[\s*(\d+)\s*,\s*(\d+)\s*\)\s*", text)
    if not match:
        raise ConfigError(f"--device_num {text!r} must look like '[0,8)'")
    start, end = int(match[1]), int(match[2])
    within_a_group = start < end and (end <= 4 or start >= 4)
    if not (within_a_group and end <= 8) and (start, end) != (0, 8):
        raise ConfigError(f"--device_num {text!r} must stay within [0,4) or [4,8), or be exactly [0,8)")
    return list(range(start, end))


def device_ips(devices: list[int], hccn_conf: Path = HCCN_CONF) -> dict[int, str]:
    """Device IPs from `hccn_tool -i <id> -ip -g`, falling back to `address_<id>=ip` lines of hccn.conf."""
    found: dict[int, str] = {}
    if shutil.which("hccn_tool"):
        for device in devices:
            out = subprocess.run(["hccn_tool", "-i", str(device), "-ip", "-g"], capture_output=True, text=True)
            match = re.search(r"ipaddr:\s*(\S+)", out.stdout)
            if match:
                found[device] = match[1]
    if len(found) < len(devices) and hccn_conf.is_file():
        for line in hccn_conf.read_text().splitlines():
            match = re.fullmatch(r"\s*address_(\d+)\s*=\s*(\S+)\s*", line)
            if match and int(match[1]) in devices:
                found.setdefault(int(match[1]), match[2])
    missing = [d for d in devices if d not in found]
    if missing:
        raise ConfigError(f"no IP for device(s) {missing}: hccn_tool gave none and {hccn_conf} has no "
                          "address_<id> lines for them")
    return found


def make_rank_table(devices: list[int], ips: dict[int, str], server_ip: str) -> dict:
    return {
        "version": "1.0",
        "server_count": "1",
        "server_list": [{
            "server_id": server_ip,
            "device": [{"device_id": str(d), "device_ip": ips[d], "rank_id": str(rank)}
                       for rank, d in enumerate(devices)],
            "host_nic_ip": "reserve",
        }],
        "status": "completed",
    }


def rank_table_name(devices: list[int], server_ip: str) -> str:
    return f"hccl_{len(devices)}p_{''.join(map(str, devices))}_{server_ip}.json"


def merge_rank_tables(tables: list[dict]) -> dict:
    """Concatenate the server lists in order and number the ranks globally (merge_hccl.py)."""
    if not tables:
        raise ConfigError("give at least one rank table to merge")
    servers, rank = [], 0
    for table in tables:
        for server in table["server_list"]:
            devices = []
            for device in server["device"]:
                devices.append({**device, "rank_id": str(rank)})
                rank += 1
            servers.append({**server, "device": devices})
    count = sum(int(t["server_count"]) for t in tables)
    return {"version": "1.0", "server_count": str(count), "server_list": servers, "status": "completed"}


def write_json(table: dict, path: Path) -> Path:
    path.write_text(json.dumps(table, indent=4) + "\n", encoding="utf-8")
    return path
