"""The studio's server console: user errors and Gradio's debug prints (no server needed)."""


def test_console_user_errors_one_line_and_no_client_prints(capsys):
    """A user's mistake is one log line and a toast without a traceback; Gradio's per-file
    'environment=client' print is dropped, every other print of its routes module kept."""
    import gradio as gr
    from gradio import routes

    from studio.console import setup_console, user_error

    setup_console()
    err = user_error("Load a background first.")
    assert isinstance(err, gr.Error) and err.print_exception is False and err.message == "Load a background first."
    routes.print("id=abc, environment=client, type=component, file_name=index.js")
    routes.print("* Monitoring URL: http://x *")
    out = capsys.readouterr()
    assert "environment=client" not in out.out and "Monitoring URL" in out.out
    assert out.err.count("user error: Load a background first.") == 1 and "Traceback" not in out.err
