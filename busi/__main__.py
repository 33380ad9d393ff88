"""`python -m busi COMMAND ...`: the five commands under one entry point (where the console
scripts are not on PATH). `python -m busi infer case.png` is `busi-infer case.png`."""

from __future__ import annotations

import sys

#: command -> (module with main(), what it does)
COMMANDS = {
    "infer": ("busi.runtime.cli", "classify images (PNG, JPEG, DICOM) with a busi ONNX model"),
    "train": ("busi.train.cli", "phantoms, check-data, fit, segmenter, evaluate, report (needs busi[train])"),
    "export": ("busi.export.cli", "a trained model folder to a self-describing ONNX file (needs busi[train])"),
    "node": ("busi.node.cli", "a DICOM node beside the PACS (needs busi[node])"),
    "serve": ("busi.serve.cli", "an inference server, open inference protocol v2 (needs busi[serve])"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["Usage: python -m busi COMMAND [ARGS]...", "",
             "busi: breast ultrasound classifier (research software, not a medical device).", "", "Commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "python -m busi COMMAND --help shows a command's options; --version the versions."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    if argv[0] == "--version":
        from busi.runtime.cli_options import version_text

        print(version_text("busi"))
        raise SystemExit(0)
    name = argv[0].removeprefix("busi-")
    if name not in COMMANDS:
        sys.stderr.write(f"error: no command {argv[0]!r} (choose {', '.join(COMMANDS)}; python -m busi --help)\n")
        raise SystemExit(2)
    import importlib

    sys.argv = [f"busi-{name}", *argv[1:]]  # the command's help and errors name it as its console script
    importlib.import_module(COMMANDS[name][0]).main()


if __name__ == "__main__":
    main()
