from spectra_core.cli import main

main()
