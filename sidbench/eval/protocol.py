"""The evaluation protocol's fixed choices, without torch: the command line names them in its help.
(The metrics are named by their registry, `sidbench.eval.METRICS`.)"""

#: The clean-fid modes supported; the first is the default (EDM's reference statistics match it).
FID_MODES = ("legacy_tensorflow", "clean")
#: Images per batch when scoring files.
DEFAULT_BATCH_SIZE = 64
#: The number of generated images of the FID protocol (docs/fid.md).
PROTOCOL_NUM_IMAGES = 50_000
