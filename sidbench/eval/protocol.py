"""The evaluation protocol's fixed choices, without torch: the command line names them in its help.
(The metrics are named by their registry, `sidbench.eval.METRICS`.)"""

#: The clean-fid modes supported; the first is the default (EDM's reference statistics match it).
FID_MODES = ("legacy_tensorflow", "clean")
#: Images per batch when scoring files.
DEFAULT_BATCH_SIZE = 64
#: The number of generated images of the FID protocol (docs/fid.md).
PROTOCOL_NUM_IMAGES = 50_000
#: The evaluation settings that choose what else is measured beside the headline metric (eval.metric)
#: and where its files are: they change no training, so a run may be resumed with others and runs
#: that differ only in them share a leaderboard row (sidbench.run_folder, sidbench.tracking).
REPORTING_SETTINGS = ("eval.metrics", "eval.final_metrics", "eval.refs", "eval.dinov2_path", "eval.vgg16_path")
