from grokfetch.cli import main

raise SystemExit(main())
