"""The evaluation protocol's fixed choices, without torch: the command line names them in its help
and `sidbench list` in its tables."""

#: The metrics `eval.metric` and a dataset card's `metric` may name (`sidbench.eval.factory.build_metric`).
METRIC_NAMES = ("fd_pixel", "fd_digits", "fid")

#: The clean-fid modes supported; the first is the default (EDM's reference statistics match it).
FID_MODES = ("legacy_tensorflow", "clean")
#: Images per batch when scoring files.
DEFAULT_BATCH_SIZE = 64
