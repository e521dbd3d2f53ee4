"""One engine per model family: load, unload, run(params, ctx). Engines know nothing of HTTP."""
