"""The Gradio demo's logic, kept apart from the UI so it can be tested without a browser.

- `limits`: what a public Space accepts (image uploads, prompt and generation bounds).
- `paths`: file access confined to configured roots.
- `runs`: browsing evolution RUN_DIRs for the dashboard.
- `config`: model paths and settings from flags / environment variables.
- `chat`, `text2image`: generation from the merged model and its parents.
- `ui`: the `gr.Blocks` app built from all of the above.
"""
