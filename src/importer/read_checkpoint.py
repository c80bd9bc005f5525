"""Reads a PyTorch checkpoint (torch.save) WITHOUT running code from it, for `seqserve import`.

Usage: read_checkpoint.py CHECKPOINT OUT_DIR
Writes OUT_DIR/tensors.safetensors (every tensor of the state dict, under its own key, as float32
when it is floating point) and prints one JSON object on stdout:
  {"ok": true, "state_dict_at": "state_dict" | null, "top_level": [...], "config": {...} | null,
   "skipped": {key: type}}
or, for a file that cannot or must not be read, {"ok": false, "error": "..."} (exit status 0: the
caller words the error). Any other exit is a bug here.

Why not torch.load: a checkpoint is a pickle, and unpickling calls whatever the file names. RecBole's
checkpoints hold its Config object, so torch.load(weights_only=True) refuses them, and
weights_only=False would run anything a crafted file carries. This unpickler resolves only an
allowlist: torch's tensor rebuilding, plain containers, numpy scalars, torch.device, and, as inert
stand-ins that never run RecBole's (or anyone's) code, the names a RecBole checkpoint refers to
(its Config class, enums, model class, yaml loader). Any other name is refused, naming it.
"""
import collections
import json
import os
import pickle
import sys
import types

# Callables a checkpoint may invoke: they only rebuild data.
ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "device"),
    ("torch", "Size"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
}
# Dtypes are plain objects (torch.float32 ...), not callables.
TORCH_DTYPES = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                "uint8", "bool", "float", "double", "half", "long", "int"}
# Names a RecBole checkpoint refers to; they become inert stand-ins (see Stub).
STUB_PREFIXES = ("recbole.", "yaml.")


class Stub:
    """Stands in for a class of a trusted-looking name: calling it, or restoring an instance's
    state, only records the arguments. Nothing of the real class runs."""

    _qualname = "?"

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        self._state = state

    def describe(self):
        args = getattr(self, "_args", ())
        return f"{self._qualname}({', '.join(map(repr, args))})" if args else self._qualname


_stubs = {}


def stub(module, name):
    key = f"{module}.{name}"
    if key not in _stubs:
        _stubs[key] = type(name, (Stub,), {"_qualname": key, "__module__": module})
    return _stubs[key]


class Refused(Exception):
    pass


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in ALLOWED:
            if module == "numpy.core.multiarray":
                module = "numpy._core.multiarray" if _has_module("numpy._core") else module
            return super().find_class(module, name)
        if module == "torch" and name in TORCH_DTYPES:
            return super().find_class(module, name)
        if module.startswith(STUB_PREFIXES):
            return stub(module, name)
        raise Refused(f"{module}.{name}")


def _has_module(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def restricted_pickle_module():
    m = types.ModuleType("seqserve_restricted_pickle")
    m.Unpickler = RestrictedUnpickler
    # torch's legacy (pre-1.6, non-zip) format reads its header pickles with pickle_module.load.
    m.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()
    m.__name__ = "seqserve_restricted_pickle"
    return m


def jsonable(v, depth=0):
    """A JSON rendering of configuration values, for the record and the options read from it."""
    if depth > 20:
        return "..."
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else str(v)
    if isinstance(v, dict):
        return {str(k): jsonable(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x, depth + 1) for x in v]
    if isinstance(v, Stub):
        return v.describe()
    if isinstance(v, type) and issubclass(v, Stub):
        return v._qualname
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return jsonable(v.item(), depth + 1)
    return str(v)


def main():
    checkpoint, out_dir = sys.argv[1:3]
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError as e:
        print(json.dumps({"ok": False, "error": f"this Python cannot read checkpoints: {e} "
                          "(it needs torch and safetensors; scripts/env.sh sets SEQSERVE_PYTHON "
                          "to the project's venv)"}))
        return
    try:
        obj = torch.load(checkpoint, map_location="cpu", weights_only=False,
                         pickle_module=restricted_pickle_module())
    except Refused as e:
        print(json.dumps({"ok": False, "refused": str(e), "error":
                          f"refused to unpickle: the checkpoint refers to {e}, which is not on the "
                          "importer's allowlist (tensors, containers, numpy scalars, RecBole's "
                          "configuration objects); unpickling it could run code from the file"}))
        return
    except Exception as e:  # a truncated or foreign file: zip, pickle or EOF errors of any kind
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(json.dumps({"ok": False, "error":
                          f"not a readable PyTorch checkpoint (truncated, or not written by "
                          f"torch.save): {msg}"}))
        return

    top_level = sorted(map(str, obj.keys())) if isinstance(obj, dict) else []
    config = None
    state = None
    state_at = None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, state_at = obj["state_dict"], "state_dict"
        cfg = obj.get("config")
        cfg_state = getattr(cfg, "_state", None)
        if isinstance(cfg_state, dict) and isinstance(cfg_state.get("final_config_dict"), dict):
            config = jsonable(cfg_state["final_config_dict"])
    elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        state = obj
    if state is None:
        print(json.dumps({"ok": False, "top_level": top_level, "error":
                          "no state dict found: expected a dict of tensors (torch.save(model."
                          "state_dict())) or a dict with one under \"state_dict\" (RecBole); "
                          f"found {type(obj).__name__}"
                          + (f" with keys {', '.join(top_level[:20])}" if top_level else "")}))
        return
    tensors, skipped = {}, {}
    for k, v in state.items():
        if torch.is_tensor(v):
            t = v.detach()
            tensors[str(k)] = (t.float() if t.is_floating_point() else t).contiguous().clone()
        else:
            skipped[str(k)] = type(v).__name__
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "tensors.safetensors"))
    print(json.dumps({"ok": True, "state_dict_at": state_at, "top_level": top_level,
                      "config": config, "skipped": skipped}))


if __name__ == "__main__":
    main()
