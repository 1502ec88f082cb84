"""``matforge import-cgcnn CKPT.pth.tar --out DIR``: a released CGCNN model as a matforge backbone."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-cgcnn",
        help="convert a released CGCNN checkpoint (.pth.tar) into a matforge backbone directory",
        description="Convert a checkpoint of github.com/txie-93/cgcnn (keys state_dict, normalizer, args) into a "
                    "matforge backbone (model.safetensors + card.json) with its CGCNN head and normaliser. "
                    "The file is read with torch.load(weights_only=True): no code in it is executed.",
    )
    p.add_argument("checkpoint", help="the CGCNN checkpoint, e.g. formation-energy-per-atom.pth.tar")
    p.add_argument("--out", required=True, help="backbone directory to write (replaced if it holds a backbone)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matforge.models.backbone_file import read_card
    from matforge.models.cgcnn_import import import_cgcnn

    out = import_cgcnn(args.checkpoint, args.out)
    card = read_card(out)
    head = card["heads"]["cgcnn"]
    what = f"{head['task']} of {head['target']}" + (f" ({head['units']})" if head["units"] else "")
    print(f"wrote {out}: {card['architecture']} {card['hyperparameters']['n_conv']} convolutions x "
          f"{card['hyperparameters']['atom_fea_len']}, {what}")
    return 0
