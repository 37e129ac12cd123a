from lightning_afm.report.cli import main

if __name__ == "__main__":
    main()
