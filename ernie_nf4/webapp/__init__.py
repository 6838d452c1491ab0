"""The Gradio app around ``ImageService``: ``ui.build_demo(service)`` builds it, ``cli.main()`` runs it."""
