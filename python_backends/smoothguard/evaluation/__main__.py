from smoothguard.evaluation.run import main

raise SystemExit(main())
