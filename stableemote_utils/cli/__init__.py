"""The ``stableemote`` command line: one module per command group, the Gradio demo beside them.

:mod:`.main` builds the parser (``stableemote = stableemote_utils.cli.main:main``);
:mod:`.lora` inspects and exports adapters; :mod:`.tinyemote` pretrains and measures
TinyEmote; :mod:`.demo` is the Gradio app. Run it as ``stableemote ...`` or
``python -m stableemote_utils.cli ...``.
"""
