# Registers the tests' instrumented filesystem (countfs.py) in every Python process started with
# this folder on PYTHONPATH, Ray workers included (they inherit the driver's environment).
try:
    import countfs

    countfs.register()
except Exception:  # fsspec missing in some interpreter: nothing to register
    pass
