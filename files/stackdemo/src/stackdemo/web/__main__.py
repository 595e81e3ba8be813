from stackdemo.web.cli import main

raise SystemExit(main())
