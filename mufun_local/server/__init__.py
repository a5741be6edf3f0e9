"""`mufun-local serve`: routes (http.py), a request body -> a job (task.py), the worker that
owns the model (worker.py), and the web page (web/)."""
