"""The FID protocol's fixed choices, without torch: the command line names them in its help."""

#: The clean-fid modes supported; the first is the default (EDM's reference statistics match it).
FID_MODES = ("legacy_tensorflow", "clean")
#: Images per batch when scoring files.
DEFAULT_BATCH_SIZE = 64
