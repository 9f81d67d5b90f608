"""FTP inspection: sans-IO codec, control-channel inspector, data connections."""
