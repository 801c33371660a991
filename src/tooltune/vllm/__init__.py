"""vLLM deployment: compressed-tensors checkpoints made with llm-compressor, and the ``vllm serve`` command.

    export.vllm_export(model_dir, out, ExportOptions(scheme=...)) -> ExportResult   (`tooltune vllm-export`)
    env.ensure_env() -> python of the isolated llm-compressor environment         (`tooltune vllm-setup`)
    command.build_vllm_command(model, ...) -> VllmCommand(argv, notes)              (`tooltune vllm-command`)
    launch.is_vllm_available() / launch.start_vllm(model, ...) -> Popen             (`tooltune serve --engine vllm`)
"""
