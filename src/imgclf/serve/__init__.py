"""``imgclf-serve``: a trained model behind a small web app (FastAPI on uvicorn).

``app.py`` the routes and the JSON they answer, ``uploads.py`` reading multipart uploads into memory
under size limits, ``worker.py`` the model thread and its bounded queue, ``model.py`` loading a
checkpoint or an ONNX export and its model card, ``static/`` the page. ``imgclf.cli.serve`` is the
command line.
"""
