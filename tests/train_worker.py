"""One training process for the distributed tests: ``python train_worker.py OPTIONS.json``.

The test sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT as torchrun would; the
options file holds TrainOptions fields, plus ``stop_after_epoch`` (interrupt after that epoch, like a
killed job) and ``result`` (where rank 0 writes its per-epoch records and final weights).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from sacvit_deploy.model import ModelConfig
from sacvit_deploy.training import TrainOptions, train


class Stop(Exception):
    pass


def main(path: str) -> int:
    spec = json.loads(Path(path).read_text())
    stop_after = spec.pop("stop_after_epoch", None)
    result_path = spec.pop("result", None)
    if spec.get("model_config"):
        spec["model_config"] = ModelConfig.from_dict(spec["model_config"])
    if spec.get("init"):
        spec["init"] = Path(spec["init"])
    for key in ("data_dir", "out_dir"):
        spec[key] = Path(spec[key])
    records: list[dict] = []

    def on_epoch_end(record: dict) -> None:
        records.append(record)
        if stop_after is not None and record["epoch"] >= stop_after:
            raise Stop

    try:
        result = train(TrainOptions(**spec), on_epoch_end=on_epoch_end)
        state = result.model.state_dict()
    except Stop:
        state = None
    if result_path and os.environ.get("RANK", "0") == "0":
        torch.save({"records": records, "state": state}, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
