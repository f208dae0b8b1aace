"""Engine: pure tensor code (models, attack, importance, influence, pathways, patching, assets).

Runs on a CPU or a GPU and knows nothing of Ray, storage or file formats.
"""
