"""Serving: MindIR export, the exported-folder model, the continuous-batching engine and the HTTP server."""
