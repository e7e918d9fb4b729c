"""``hemoprofile serve``: a local upload-and-predict page over a trained cohort.

A user drops one patient's single-cell images (a folder or a zip); the server classifies every cell with
the cohort's cell classifier, builds the patient's row as the cohort's patient table does, scores it
with the cohort's patient model and shows the cell-type counts and fractions, a gallery per predicted
type, the probability of disease and of each subtype beside the model's cross-validated performance,
and CSV downloads.

* :mod:`.uploads`: upload limits, safe relative paths, streamed writes, zip checks and extraction.
* :mod:`.analysis`: the models and the analysis of one upload (classify -> patient row -> prediction).
* :mod:`.jobs`: per-upload jobs with unguessable ids and their temporary folders; the worker thread.
* :mod:`.app`: the FastAPI app (the page and its JSON API).
* ``static/``: the page (HTML, JavaScript, CSS; nothing loaded from elsewhere).

Why FastAPI and a hand-written page rather than Streamlit or Panel: the whole app is a few routes and one
page, so the project keeps every safety rule in its own code (where uploads are written, how big they
may be, which job a request may read) and tests each with FastAPI's ``TestClient`` without a browser;
FastAPI, Starlette and uvicorn are small, widely used and well kept, and there is no websocket
session runtime holding state per browser tab.

``serve`` is an application layer over the stages, like ``cli``: it imports classify, ingest and
patients, and no stage imports it. Nothing is imported here (the app modules load FastAPI; the
analysis loads torch when it runs).
"""
