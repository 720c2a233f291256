"""Call the explorer's callbacks through its real HTTP endpoint, without a browser.

    >>> from analyses.app.server import create_app
    >>> client = Client(create_app())
    >>> figures = client.call("scores-a.figure", {"tabs.value": "detectors", "rev-a.value": 3})
    >>> figures["scores-a.figure"]["data"][0]["type"]
    'heatmap'

`call` sends what the page sends (every input of the callback, from `values` or the page's
initial layout) to `/_dash-update-component` and returns the outputs, as tests and benchmarks
need them. Figure arrays come back as plotly's typed arrays; `array()` decodes them.
"""

from __future__ import annotations

import base64

import numpy as np

DTYPES = {"f8": np.float64, "f4": np.float32, "i4": np.int32, "i2": np.int16, "i1": np.int8, "u1": np.uint8,
          "u2": np.uint16, "u4": np.uint32}


class Client:
    """A Flask test client that speaks Dash's callback protocol."""

    def __init__(self, app):
        self.app = app
        self.http = app.server.test_client()
        self.defaults = _initial_values(app.layout)

    def call(self, output: str, values: dict | None = None, changed: list[str] | None = None):
        """Run the callback that writes `output` ("id.prop", or several joined as Dash names them).

        Inputs and states not given in `values` take their initial value in the layout. `changed`
        names the inputs that triggered the call (default: all of them, as when the page loads). A
        slider position given in `values` counts as chosen for the model in `values`, as after the
        user moved it. Returns the output's value, or for a callback with several outputs a dict
        ("id.prop" -> value) of those it updated.
        """
        key = self._key(output)
        spec = self.app.callback_map[key]
        given = values or {}
        values = {**self.defaults, **given}
        values["shown.data"] = {**_set_sliders(given, self.defaults), **(values.get("shown.data") or {})}

        def items(deps):
            return [{**d, "value": values.get(f"{d['id']}.{d['property']}")} for d in deps]

        outputs = [{"id": o.split(".")[0], "property": o.split(".")[1]} for o in _outputs(key)]
        body = {"output": key, "outputs": outputs if len(outputs) > 1 else outputs[0],
                "inputs": items(spec["inputs"]), "state": items(spec.get("state", [])),
                "changedPropIds": changed or [f"{d['id']}.{d['property']}" for d in spec["inputs"]]}
        reply = self.http.post("/_dash-update-component", json=body)
        if reply.status_code == 204:
            return None if len(outputs) == 1 else {}  # no_update / PreventUpdate
        if reply.status_code != 200:
            raise RuntimeError(f"{key}: HTTP {reply.status_code}: {reply.get_data(as_text=True)[:500]}")
        response = reply.get_json()["response"]
        found = {f"{cid}.{prop}": v for cid, props in response.items() for prop, v in props.items()}
        return found.get(outputs[0]["id"] + "." + outputs[0]["property"]) if len(outputs) == 1 else found

    def _key(self, output: str) -> str:
        for key in self.app.callback_map:
            if output == key or output in _outputs(key):
                return key
        raise KeyError(f"No callback writes {output!r}.")


def _set_sliders(given: dict, defaults: dict) -> dict:
    """The explorer's record of the sliders already set for their model ("slider-a" -> model): a slider
    is set unless `given` names a new model without a position."""
    found = {}
    for pane in ("a", "b"):
        model, index = f"model-{pane}.value", f"rev-{pane}.value"
        if index in given or model not in given:
            found[f"slider-{pane}"] = given.get(model, defaults.get(model))
    return found


def array(value) -> np.ndarray:
    """A figure array as numpy: plain nested lists (None as NaN) or a plotly typed array."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=DTYPES[value["dtype"]])
        shape = [int(s) for s in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape).astype(np.float64)
    return np.array(value, dtype=np.float64)


def _outputs(key: str) -> list[str]:
    """The "id.prop" outputs of a callback key ("..a.figure...b.figure.." or "a.figure")."""
    return [part for part in key.strip(".").split("...") if part] if key.startswith("..") else [key]


def _initial_values(layout) -> dict:
    """Every "id.prop" the layout sets, walked from the root component."""
    values = {}
    stack = [layout]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, tuple)):
            stack.extend(node)
            continue
        if not hasattr(node, "to_plotly_json"):
            continue
        props = node.to_plotly_json()["props"]
        if "id" in props and isinstance(props["id"], str):
            values.update({f"{props['id']}.{k}": v for k, v in props.items() if k not in ("id", "children")})
        stack.append(props.get("children"))
    return values
