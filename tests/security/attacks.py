"""Hostile files, generated: what someone could hand a slimfuse user.

Each :class:`Attack` writes its files into a folder (next to a valid bundle it may start from)
and says which command a user would run on them and the one line slimfuse must answer with.
A payload that would run code writes the file ``PWNED`` in the folder: the tests assert it never
appears. ``python -m tests.security.attacks DIR`` writes them all, to look at.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DATA = ["--data", "digits"]


@dataclass(frozen=True)
class Attack:
    name: str
    make: Callable[[Path, Path], list[str]]  # (folder, a valid bundle) -> CLI arguments
    match: str  # a regex the one error line must match


def _bundle_copy(good: Path, dest: Path) -> Path:
    shutil.copytree(good, dest)
    return dest


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "slimfuse.json").read_text())


def _write_meta(bundle: Path, meta: object) -> None:
    (bundle / "slimfuse.json").write_text(json.dumps(meta))


def _with_model(good: Path, dir: Path, name: str, **changes: object) -> list[str]:
    b = _bundle_copy(good, dir / name)
    meta = _meta(b)
    meta["model"].update(changes)
    _write_meta(b, meta)
    return ["eval", "--model", str(b), *DATA]


def _evil_py(dir: Path) -> Path:
    path = dir / "evil.py"
    path.write_text(
        "from pathlib import Path\n"
        f"Path({str(dir / 'PWNED')!r}).write_text('ran')\n"
        "def build(**kw):\n"
        "    import torch\n"
        "    return torch.nn.Linear(64, 10)\n"
    )
    return path


# -- code in a bundle or recipe -------------------------------------------------------------------


def os_system(dir: Path, good: Path) -> list[str]:
    return _with_model(
        good, dir, "os_system", source="os:system", kwargs={"command": f"touch {dir / 'PWNED'}"}
    )


def subprocess_run(dir: Path, good: Path) -> list[str]:
    return _with_model(
        good,
        dir,
        "subprocess_run",
        source="subprocess:run",
        kwargs={"args": ["touch", str(dir / "PWNED")]},
    )


def file_outside(dir: Path, good: Path) -> list[str]:
    _evil_py(dir)
    return _with_model(good, dir, "file_outside", source="../evil.py:build", kwargs={})


def fused_member(dir: Path, good: Path) -> list[str]:
    member = _meta(good)["model"]
    bad = {"source": "os:system", "kwargs": {"command": f"touch {dir / 'PWNED'}"}}
    return _with_model(
        good,
        dir,
        "fused_member",
        source="fused",
        kwargs={
            "method": "mean",
            "members": [{"name": "a", "spec": member}, {"name": "b", "spec": bad}],
        },
    )


def recipe_model(dir: Path, good: Path) -> list[str]:
    recipe = dir / "recipe_model.yaml"
    recipe.write_text(
        f"model: 'os:system'\nmodel_kwargs: {{command: 'touch {dir / 'PWNED'}'}}\n"
        "data: digits\nstages:\n  - stage: eval\n"
    )
    return ["run", str(recipe), "--out", str(dir / "run_model")]


def recipe_stage_model(dir: Path, good: Path) -> list[str]:
    _evil_py(dir)
    recipe = dir / "recipe_stage.yaml"
    recipe.write_text(
        f"data: digits\nstages:\n  - stage: train\n    model: '{dir / 'evil.py'}:build'\n"
    )
    return ["run", str(recipe), "--out", str(dir / "run_stage")]


def recipe_data(dir: Path, good: Path) -> list[str]:
    _evil_py(dir)
    recipe = dir / "recipe_data.yaml"
    recipe.write_text(f"data: '{dir / 'evil.py'}:build'\nstages:\n  - stage: eval\n")
    return ["run", str(recipe), "--out", str(dir / "run_data")]


# -- sizes a file asks for ------------------------------------------------------------------------


def huge_hidden(dir: Path, good: Path) -> list[str]:
    kwargs = {"in_features": 64, "num_classes": 10, "hidden": [1e6, 1e6]}
    return _with_model(good, dir, "huge_hidden", kwargs=kwargs)


def huge_total(dir: Path, good: Path) -> list[str]:
    kwargs = {"in_features": 64, "num_classes": 10, "hidden": [65536, 65536]}
    return _with_model(good, dir, "huge_total", kwargs=kwargs)


def unknown_kwarg(dir: Path, good: Path) -> list[str]:
    kwargs = {"in_features": 64, "num_classes": 10, "command": "rm -rf /"}
    return _with_model(good, dir, "unknown_kwarg", kwargs=kwargs)


def huge_encoder(dir: Path, good: Path) -> list[str]:
    config = {"model_type": "bert", "hidden_size": 1 << 30, "num_hidden_layers": 2}
    return _with_model(good, dir, "huge_encoder", source="hf_encoder", kwargs={"config": config})


def resize_bomb(dir: Path, good: Path) -> list[str]:
    edit = {"kind": "resize", "modules": {"net.0": {"shapes": {"weight": [1 << 20, 1 << 20]}}}}
    return _with_model(good, dir, "resize_bomb", edits=[edit])


def resize_attr(dir: Path, good: Path) -> list[str]:
    edit = {"kind": "resize", "modules": {"net.0": {"attrs": {"forward": 1}}}}
    return _with_model(good, dir, "resize_attr", edits=[edit])


def unknown_edit(dir: Path, good: Path) -> list[str]:
    return _with_model(good, dir, "unknown_edit", edits=[{"kind": "exec", "code": "1"}])


def edit_not_object(dir: Path, good: Path) -> list[str]:
    return _with_model(good, dir, "edit_not_object", edits=["resize"])


# -- slimfuse.json --------------------------------------------------------------------------------


def meta_list(dir: Path, good: Path) -> list[str]:
    b = _bundle_copy(good, dir / "meta_list")
    _write_meta(b, [1, 2, 3])
    return ["eval", "--model", str(b), *DATA]


def meta_no_model(dir: Path, good: Path) -> list[str]:
    b = _bundle_copy(good, dir / "meta_no_model")
    meta = _meta(b)
    del meta["model"]
    _write_meta(b, meta)
    return ["eval", "--model", str(b), *DATA]


def meta_kwargs_string(dir: Path, good: Path) -> list[str]:
    return _with_model(good, dir, "meta_kwargs_string", kwargs="in_features=64")


def meta_source_number(dir: Path, good: Path) -> list[str]:
    return _with_model(good, dir, "meta_source_number", source=7)


def meta_not_json(dir: Path, good: Path) -> list[str]:
    b = _bundle_copy(good, dir / "meta_not_json")
    (b / "slimfuse.json").write_bytes(b"\x00\xff{{{ not json")
    return ["eval", "--model", str(b), *DATA]


# -- model.safetensors ----------------------------------------------------------------------------


def _weights(good: Path, dir: Path, name: str, data: bytes) -> list[str]:
    b = _bundle_copy(good, dir / name)
    (b / "model.safetensors").write_bytes(data)
    return ["eval", "--model", str(b), *DATA]


def _raw(good: Path) -> bytes:
    return (good / "model.safetensors").read_bytes()


def _header(good: Path) -> tuple[dict, bytes]:
    raw = _raw(good)
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _pack(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def zero_bytes(dir: Path, good: Path) -> list[str]:
    return _weights(good, dir, "zero_bytes", b"")


def truncated(dir: Path, good: Path) -> list[str]:
    return _weights(good, dir, "truncated", _raw(good)[:-100])


def header_garbage(dir: Path, good: Path) -> list[str]:
    raw = _raw(good)
    return _weights(good, dir, "header_garbage", raw[:8] + b"\xde\xad" * 20 + raw[48:])


def header_too_long(dir: Path, good: Path) -> list[str]:
    return _weights(good, dir, "header_too_long", struct.pack("<Q", 1 << 60) + _raw(good)[8:])


def overlapping(dir: Path, good: Path) -> list[str]:
    header, body = _header(good)
    names = [k for k in header if k != "__metadata__"]
    a, b = names[0], names[1]
    size_b = header[b]["data_offsets"][1] - header[b]["data_offsets"][0]
    start = header[a]["data_offsets"][0]
    header[b]["data_offsets"] = [start, start + size_b]  # b reads a's bytes
    return _weights(good, dir, "overlapping", _pack(header, body))


def relabelled_dtype(dir: Path, good: Path) -> list[str]:
    header, body = _header(good)
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    header[name]["dtype"] = "I32"
    return _weights(good, dir, "relabelled_dtype", _pack(header, body))


def _tensors(good: Path, dir: Path, name: str, change: Callable[[dict], None]) -> list[str]:
    b = _bundle_copy(good, dir / name)
    state = load_file(b / "model.safetensors")
    change(state)
    save_file({k: v.contiguous() for k, v in state.items()}, b / "model.safetensors")
    return ["eval", "--model", str(b), *DATA]


def _transpose(state: dict) -> None:
    state["net.0.weight"] = state["net.0.weight"].t()


def transposed(dir: Path, good: Path) -> list[str]:
    return _tensors(good, dir, "transposed", _transpose)


def missing_tensor(dir: Path, good: Path) -> list[str]:
    return _tensors(good, dir, "missing_tensor", lambda s: s.pop("net.0.bias"))


def extra_tensor(dir: Path, good: Path) -> list[str]:
    return _tensors(good, dir, "extra_tensor", lambda s: s.update(evil=torch.zeros(3)))


# -- other files ----------------------------------------------------------------------------------


def random_pt(dir: Path, good: Path) -> list[str]:
    path = dir / "random.pt"
    path.write_bytes(bytes(range(256)) * 8)
    return ["eval", "--model", "mlp", "--weights", str(path), *DATA]


def int8_external_data(dir: Path, good: Path) -> list[str]:
    """An int8 bundle whose ONNX graph reads a tensor from a file outside the bundle."""
    from onnx import TensorProto, helper

    b = _bundle_copy(good, dir / "int8_external_data")
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64, 10])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "/etc/passwd"), ("offset", "0"), ("length", "2560")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])],
        initializer=[weight],
    )
    data = helper.make_model(graph).SerializeToString()
    save_file(
        {"graph": torch.frombuffer(bytearray(data), dtype=torch.uint8)}, b / "model.safetensors"
    )
    meta = _meta(b)
    meta["model"]["edits"] = [{"kind": "quantized_graph", "info": {"mode": "static"}}]
    _write_meta(b, meta)
    return ["eval", "--model", str(b), *DATA]


def missing_bundle(dir: Path, good: Path) -> list[str]:
    return ["eval", "--model", str(dir / "runs" / "nope"), *DATA]


UNTRUSTED = r"is code \(file\.py:fn or module:fn\) and would run; pass --trust-code"
ATTACKS = [
    Attack("os_system", os_system, UNTRUSTED),
    Attack("subprocess_run", subprocess_run, UNTRUSTED),
    Attack("file_outside", file_outside, UNTRUSTED),
    Attack("fused_member", fused_member, UNTRUSTED),
    Attack("recipe_model", recipe_model, UNTRUSTED),
    Attack("recipe_stage_model", recipe_stage_model, UNTRUSTED),
    Attack("recipe_data", recipe_data, UNTRUSTED),
    Attack("huge_hidden", huge_hidden, r"hidden\.0: Input should be less than or equal to 65536"),
    Attack("huge_total", huge_total, r"would hold 16\.\d GiB of weights; a model source may build"),
    Attack("unknown_kwarg", unknown_kwarg, r"command: Extra inputs are not permitted"),
    Attack(
        "huge_encoder", huge_encoder, r"encoder config hidden_size=1073741824: expected at most"
    ),
    Attack("resize_bomb", resize_bomb, r"shape \[1048576, 1048576\], but the weights file holds"),
    Attack("resize_attr", resize_attr, r"forward=1 is not a size this edit sets"),
    Attack("unknown_edit", unknown_edit, r"unknown structural edit 'exec'"),
    Attack(
        "edit_not_object", edit_not_object, r"model\.edits\.0: Input should be a valid dictionary"
    ),
    Attack("meta_list", meta_list, r"slimfuse\.json: expected a JSON object, found list"),
    Attack("meta_no_model", meta_no_model, r"slimfuse\.json: model: Field required"),
    Attack(
        "meta_kwargs_string", meta_kwargs_string, r"model\.kwargs: Input should be a valid dict"
    ),
    Attack("meta_source_number", meta_source_number, r"model\.source: Input should be a valid str"),
    Attack("meta_not_json", meta_not_json, r"slimfuse\.json: not valid JSON"),
    Attack("zero_bytes", zero_bytes, r"model\.safetensors: 0 bytes, truncated"),
    Attack(
        "truncated", truncated, r"the tensors take \d+ bytes but the file holds \d+ .*truncated"
    ),
    Attack("header_garbage", header_garbage, r"the header is not JSON; not a safetensors file"),
    Attack("header_too_long", header_too_long, r"header length \d+ but the file has \d+ bytes"),
    Attack("overlapping", overlapping, r"overlaps the one before"),
    Attack("relabelled_dtype", relabelled_dtype, r"is I32 in the file, the model expects F32"),
    Attack("transposed", transposed, r"'net\.0\.weight' has shape \[64, 32\] .* \(transposed\?\)"),
    Attack(
        "missing_tensor", missing_tensor, r"the weights do not fit the model: missing net\.0\.bias"
    ),
    Attack("extra_tensor", extra_tensor, r"the weights do not fit the model: unexpected evil"),
    Attack("random_pt", random_pt, r"random\.pt: not a PyTorch file"),
    Attack("int8_external_data", int8_external_data, r"reads tensors from external files \(w\)"),
    Attack(
        "missing_bundle", missing_bundle, r"model '.*runs/nope' not found: no such bundle folder"
    ),
]


def make_good(dir: Path) -> Path:
    """A valid bundle: an MLP (64 -> 32 -> 10) for scikit-learn's digits."""
    import slimfuse

    torch.manual_seed(0)
    model = slimfuse.build_model("mlp", in_features=64, num_classes=10, hidden=[32])
    return slimfuse.save(model, dir / "good")


if __name__ == "__main__":  # pragma: no cover - writes the files to look at
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    good = make_good(out)
    for attack in ATTACKS:
        print(attack.name, " ".join(attack.make(out, good)))
