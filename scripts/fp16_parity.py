"""How far the float16 ONNX rewrite (the TensorRT 11 FP16 path) moves a model's answers, measured on CPU.

Exports a model (random weights unless --checkpoint), rewrites stage 1 and stage 2 to float16 with
``sacvit_deploy.engine.fp16.convert_to_fp16`` and runs both versions with ONNX Runtime (CPU) on real
images: max |logit difference|, top-1 agreement, confidence difference, token-selection agreement,
and exit-decision agreement through ``EarlyExitPipeline``.

    python scripts/fp16_parity.py --variant deit_small_224 --format lf-vit --images photos/ [--head-scale 40]

Caveat: ONNX Runtime's CPU provider has float16 kernels for few operators and computes the others in
float32 between casts, so this measures the rewrite (weights and activations rounded to float16 at
every node boundary, islands in float32), not TensorRT's float16 kernels. It is not part of the test
suite: a DeiT-S export takes a minute on two cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch


def load_images(folder: Path, cfg) -> torch.Tensor:
    try:
        from sacvit_deploy.runtime.images import collect_images, load_image, preprocess
    except ImportError:  # branches without the image module: the DeiT recipe, inline
        from PIL import Image

        def collect_images(inputs):
            return sorted(
                p for p in Path(inputs[0]).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
            )

        def load_image(path):
            return Image.open(path).convert("RGB")

        def preprocess(img, cfg):
            w, h = img.size
            s = cfg.resize_size / min(w, h)
            img = img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
            w, h = img.size
            left, top = (w - cfg.input_size) // 2, (h - cfg.input_size) // 2
            a = (
                np.asarray(img.crop((left, top, left + cfg.input_size, top + cfg.input_size)), np.float32)
                / 255
            )
            return ((a - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)).transpose(2, 0, 1)

    arrays = [preprocess(load_image(p), cfg) for p in collect_images([folder])]
    batch = torch.from_numpy(np.stack(arrays).astype(np.float32))
    return torch.cat([batch, batch.flip(-1)])  # and their mirror images


@torch.no_grad()
def main() -> None:
    from sacvit_deploy.backends.onnxruntime_backend import OnnxRuntimeRunner
    from sacvit_deploy.core.manifest import Manifest
    from sacvit_deploy.engine.fp16 import convert_to_fp16
    from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
    from sacvit_deploy.model import SACViT
    from sacvit_deploy.model.config import make_config
    from sacvit_deploy.runtime.pipeline import EarlyExitPipeline, mixed_threshold, run_any_batch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="deit_small_224")
    parser.add_argument("--format", default="lf-vit")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument(
        "--head-scale", type=float, default=1.0, help="sharpen a random head (spreads confidences)"
    )
    parser.add_argument("--target-trt", default="10")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = SACViT(make_config(args.variant, args.format)).eval()
    model.head.weight.mul_(args.head_scale)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        t = time.perf_counter()
        export_artifacts(model, folder, ExportOptions(target_trt=args.target_trt, weights=False), args.format)
        print(f"exported {args.variant} ({args.format}) in {time.perf_counter() - t:.0f} s")
        m = Manifest.load(folder)
        runners = {}
        for role in ("stage1", "stage2"):
            entry = m.graphs[role]
            t = time.perf_counter()
            conversion = convert_to_fp16(onnx.load(str(folder / entry.file)))
            onnx.save(conversion.model, str(folder / f"{role}_fp16.onnx"))
            print(f"{role}: {conversion.summary()} ({time.perf_counter() - t:.1f} s)")
            runners[role] = OnnxRuntimeRunner(folder / entry.file, entry.inputs, entry.outputs).activate()
            runners[role + "16"] = OnnxRuntimeRunner(
                folder / f"{role}_fp16.onnx", entry.inputs, entry.outputs
            ).activate()
        images = load_images(args.images, m.preprocess)
        n = images.shape[0]
        x = np.ascontiguousarray(np.asarray(images))  # runners take and return numpy

        def tensors(out):
            return {k: torch.from_numpy(v) for k, v in out.items()}

        s1 = tensors(run_any_batch(runners["stage1"], {"image": x}))
        h1 = tensors(run_any_batch(runners["stage116"], {"image": x}))
        sel = (s1["target_index"].sort(1).values == h1["target_index"].sort(1).values).all(1).float().mean()
        print(f"\n{n} images ({args.images}, with mirror images); head scale {args.head_scale}")
        print(
            f"stage1: max|dlogit| {float((s1['logits'] - h1['logits']).abs().max()):.3e}, "
            f"top-1 {float((s1['logits'].argmax(1) == h1['logits'].argmax(1)).float().mean()):.4f}, "
            f"max|dconfidence| {float((s1['confidence'] - h1['confidence']).abs().max()):.3e}, "
            f"selection {float(sel):.4f}"
        )
        feed = {
            "image": x,
            **{k: s1[k].numpy() for k in ("target_index", "nontarget_tokens", "target_features")},
        }
        l2 = tensors(run_any_batch(runners["stage2"], feed))["logits"]
        h2 = tensors(run_any_batch(runners["stage216"], feed))["logits"]
        print(
            f"stage2 (same stage-1 inputs): max|dlogit| {float((l2 - h2).abs().max()):.3e}, "
            f"top-1 {float((l2.argmax(1) == h2.argmax(1)).float().mean()):.4f}"
        )
        full = EarlyExitPipeline(runners["stage1"], runners["stage2"], m.exit_threshold)
        half = EarlyExitPipeline(runners["stage116"], runners["stage216"], m.exit_threshold)
        print(
            f"confidences: min {float(s1['confidence'].min()):.4f}, max {float(s1['confidence'].max()):.4f}"
        )
        for th in (m.exit_threshold, mixed_threshold(s1["confidence"])):
            a, b = full.run(x, th), half.run(x, th)
            a.logits, b.logits = torch.from_numpy(a.logits), torch.from_numpy(b.logits)
            a.stage, b.stage = torch.from_numpy(a.stage), torch.from_numpy(b.stage)
            print(
                f"pipeline @ {th:.4f}: exit rate {a.exit_rate:.3f}, max|dlogit| {float((a.logits - b.logits).abs().max()):.3e}, "
                f"top-1 {float((a.logits.argmax(1) == b.logits.argmax(1)).float().mean()):.4f}, "
                f"exit agreement {float((a.stage == b.stage).float().mean()):.4f}"
            )


if __name__ == "__main__":
    main()
