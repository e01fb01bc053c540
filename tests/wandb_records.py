"""Read back what an offline W&B run recorded: the records of its ``run-*.wandb`` file and its media files.

Offline runs keep config, summary and history only inside the ``.wandb`` file: a log of protobuf ``Record``s in
the LevelDB log format (a 7-byte ``:W&B`` header, then 32 KiB blocks of chunks with a 7-byte header each:
CRC32, length, type 1 full / 2 first / 3 middle / 4 last).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7


def read_records(path: Path) -> list[pb.Record]:
    """Every record of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind == 0 and length == 0:
            offset += BLOCK - offset % BLOCK if offset % BLOCK else 0
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _value(value_json: str) -> Any:
    return json.loads(value_json)


class OfflineRun:
    """The run record (name, group, tags), merged config, history rows and final summary of an offline run."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        (log,) = self.dir.glob("run-*.wandb")
        self.records = read_records(log)
        self.config: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.run = None
        for record in self.records:
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.run = record.run
                for item in record.run.config.update:
                    self.config[item.key] = _value(item.value_json)
            elif kind == "config":
                for item in record.config.update:
                    self.config[item.key] = _value(item.value_json)
            elif kind == "history":
                row = {}
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    row[key] = _value(item.value_json)
                self.history.append(row)
            elif kind == "summary":
                for item in record.summary.update:
                    key = item.key or "/".join(item.nested_key)
                    self.summary[key] = _value(item.value_json)
        for row in self.history:  # offline runs may write no summary record: the last logged value is the summary
            for key, value in row.items():
                self.summary.setdefault(key, value)

    def series(self, key: str) -> list[Any]:
        """Every logged value of ``key``, in order."""
        return [row[key] for row in self.history if key in row]

    def media(self, pattern: str) -> list[Path]:
        """Media files of the run matching a glob under ``files/media``."""
        return sorted((self.dir / "files" / "media").glob(pattern))
