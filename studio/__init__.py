"""The Gradio studio: widgets wired to ``pipeline`` (no pipeline logic lives here)."""
