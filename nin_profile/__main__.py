from nin_profile.cli import main

raise SystemExit(main())
