"""``tooltune run``: the seed guide's steps as one reproducible run (stages, manifest, skip/resume, report).

Public API:

    load_pipeline_config(argv) -> PipelineConfig            the pipeline YAML (+ command-line overrides)
    run_pipeline(config, from_stage=None, only=None) -> RunReport
    run_stages(stages, config, run_dir, ...) -> RunReport   the generic runner, for any list of ``Stage``
    STAGE_NAMES                                             preview, train, export, gguf, eval, quantize, ...
"""

from tooltune.pipeline.config import PipelineConfig, load_pipeline_config
from tooltune.pipeline.runner import PipelineError, RunReport, Stage, StageContext, StageOutput, run_stages
from tooltune.pipeline.stages import STAGE_NAMES, run_pipeline

__all__ = [
    "STAGE_NAMES",
    "PipelineConfig",
    "PipelineError",
    "RunReport",
    "Stage",
    "StageContext",
    "StageOutput",
    "load_pipeline_config",
    "run_pipeline",
    "run_stages",
]
