"""A ``synth:`` block in a pipeline config: generate the data first, then train and evaluate on it.

::

    synth:
      spec: seed_tools/synth.yaml   # relative to the config file; every other key overrides the spec's
      languages: [zh]
    # dataset / dataset_dir / eval_dataset are then filled in: <run_dir>/synth/<name>.json and <name>_test.json

The offline generator is deterministic and fast, so it runs at the start of every ``tooltune run``; the stages that
read the data are re-run only when its bytes change (their keys hash the dataset files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from tooltune.synth.spec import SynthError, load_spec, spec_from_mapping


def apply_synth(config: Any, console: Console) -> None:
    block: dict[str, Any] | None = config.pipeline.synth
    if not block:
        return
    from tooltune.synth.build import prepare, synthesize, write_outputs

    base_dir = config.source.parent if config.source else Path.cwd()
    block = dict(block)
    spec_path = block.pop("spec", None)
    if spec_path is not None:
        path = Path(spec_path)
        spec = load_spec(path if path.is_absolute() else base_dir / path, block)
    elif "tools" in block:
        spec = spec_from_mapping(block, base_dir=base_dir, source=f"{config.source or 'config'}: synth")
    else:
        raise SynthError(f"{config.source or 'config'}: the synth block needs `spec` (a synth spec file) or `tools`")
    out_dir = config.run_dir / "synth"
    plan, offline = prepare(spec)
    console.print(f"synth plan ({spec.source}):", highlight=False)
    console.print(plan.format(spec.languages), highlight=False, markup=False, soft_wrap=True)
    result = synthesize(spec, plan, offline=offline)
    write_outputs(spec, result, out_dir)
    console.print(result.summary(), highlight=False, markup=False)
    if not result.train:
        raise SynthError(f"synth produced no training sample; see {out_dir / 'report.md'}")
    config.data.dataset = spec.name
    config.data.dataset_dir = str(out_dir)
    if result.test and not config.pipeline.eval_dataset:
        config.pipeline.eval_dataset = f"{spec.name}_test"
