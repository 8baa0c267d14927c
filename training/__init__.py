"""Training of the age/gender heads (installed as ``agestimate.training``; needs the ``train`` extra).

- `heads`: the torch network (EVR, gender, RAPL) and its losses;
- `references`: age positions and reference selection (RAPL Algorithm 1);
- `fit`: `fit_heads` and `HeadOptions`;
- `export`: ONNX export and the model directory read by `agestimate.heads.model`.
"""
