"""`mlpl export`: a run's model as one self-contained ONNX or TorchScript file with its metadata.

The exported graph is `ProbabilityModel` (uint8 images [B, 3, S, S] → probabilities [B, C], normalisation
inside); its metadata is the run's `ModelMeta` as JSON under the key `mlpl.model` (ONNX: `metadata_props`;
TorchScript: the extra file `mlpl.model.json`): class names, image size, mean/std, interpolation,
backbone, head and the per-class thresholds.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.run import MODEL_META_KEY
from mlpl.stages.deploy.model import LoadedRun
from mlpl.stages.registry import Registry

log = logging.getLogger(__name__)

TORCHSCRIPT_META_FILE = f"{MODEL_META_KEY}.json"
ONNX_OPSET = 18


def _dummy(loaded: LoadedRun, batch: int = 2) -> torch.Tensor:
    size = loaded.meta.image_size
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def export_onnx(loaded: LoadedRun, out: Path) -> None:
    import onnx

    model = loaded.model.cpu().eval()
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # their pass-by-pass INFO lines say nothing to a user
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(model, (_dummy(loaded),), dynamo=True, external_data=False, opset_version=ONNX_OPSET,
                                input_names=["images"], output_names=["probabilities"],
                                dynamic_shapes={"images": {0: batch}}, verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = MODEL_META_KEY, loaded.meta.to_json()
    onnx.save_model(proto, str(out))


def export_torchscript(loaded: LoadedRun, out: Path) -> None:
    model = loaded.model.cpu().eval()
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; it is still what many runtimes load
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        with torch.no_grad():
            traced = torch.jit.trace(model, (_dummy(loaded),), check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_META_FILE: loaded.meta.to_json()})


@dataclass(frozen=True)
class ExportFormatInfo:
    name: str
    description: str
    write: Callable[[LoadedRun, Path], None]


EXPORT_FORMATS: Registry[ExportFormatInfo] = Registry("export format")
EXPORT_FORMATS.register(ExportFormatInfo("onnx", "ONNX (run with onnxruntime); metadata in metadata_props",
                                         export_onnx))
EXPORT_FORMATS.register(ExportFormatInfo("torchscript", f"TorchScript (torch.jit.load); metadata in the extra file "
                                         f"{TORCHSCRIPT_META_FILE}", export_torchscript))


def export_run(loaded: LoadedRun, fmt: str, out: Path) -> Path:
    """Write the model to `out` in format `fmt` (atomically: a temporary file, then a rename)."""
    info = EXPORT_FORMATS.get(fmt, option="--format")
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        info.write(loaded, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s (%s) → %s", loaded.run, fmt, out)
    return out
