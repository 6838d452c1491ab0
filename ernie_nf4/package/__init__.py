"""What an ERNIE-Image NF4 package is on disk, and the checks every open runs.

- ``format``: components, allowed classes (the libraries' own, never a package's code), NF4 settings;
- ``json_file``: a package's JSON files, read within a size and a depth bound;
- ``bounds``: sane bounds on the sizes a component's config asks for;
- ``safetensors_header``: a safetensors file's header, checked against the file's length;
- ``finite``: a sample of every floating tensor, read from disk, holds no NaN or infinity;
- ``metadata``: ``quantization_metadata.json``, measured from the files, validated, verified;
- ``check``: ``check_package``, what opening any folder checks, whoever wrote it;
- ``sizes``: sizes of a package as found on disk, for the Stats tab;
- ``preview_map``: the live previews' latent->RGB map, fitted from the package's VAE, stored and checked;
- ``read_ahead``: the weight files read into the file cache in the background while a load starts.

May import: the root modules.
"""
