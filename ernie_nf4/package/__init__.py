"""What an ERNIE-Image NF4 package is on disk, and the checks every open runs.

- ``format``: components, allowed classes (an allow-list, never a package's own code), NF4 settings;
- ``safetensors_header``: a safetensors file's header, checked against the file's length;
- ``metadata``: ``quantization_metadata.json``, measured from the files, validated, verified;
- ``check``: ``check_package``, what opening any folder checks, whoever wrote it;
- ``sizes``: sizes of a package as found on disk, for the Stats tab.

May import: the root modules.
"""
