"""datalad xnat-update, as stages: command (the run) -> plan -> write -> fetch.

Kept free of imports, so a download helper process (`python -m xnat_init.update.helpers`)
starts without loading DataLad.
"""
