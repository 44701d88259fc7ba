# The Debian package (CPack, DEB generator): /usr/bin/kiln, the systemd unit, a commented
# /etc/kiln/config.toml as a conffile, and maintainer scripts that create the kiln user.
# Build it with scripts/build-deb.sh (release preset), or `cpack -G DEB` in any build dir.

install(FILES ${CMAKE_CURRENT_LIST_DIR}/kiln.service DESTINATION /lib/systemd/system
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
install(FILES ${CMAKE_CURRENT_LIST_DIR}/config.toml DESTINATION /etc/kiln
        PERMISSIONS OWNER_READ OWNER_WRITE)

set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "kiln")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_PACKAGE_CONTACT "kiln maintainers <kiln@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "GitLab-compatible runner daemon for Linux build hosts")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "GitLab-compatible runner daemon for Linux build hosts\n kiln asks GitLab for CI jobs and runs them with the shell or Docker executor.\n It reads gitlab-runner's config.toml, drains jobs on `systemctl stop`, reloads\n its config live and serves Prometheus metrics.")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION "devel")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
# Library dependencies come from dpkg-shlibdeps; git fetches sources, adduser/passwd run in
# postinst.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "git, adduser, passwd, ca-certificates")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "docker.io | docker-ce")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_CURRENT_LIST_DIR}/debian/postinst
    ${CMAKE_CURRENT_LIST_DIR}/debian/prerm
    ${CMAKE_CURRENT_LIST_DIR}/debian/postrm
    ${CMAKE_CURRENT_LIST_DIR}/debian/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
# A distribution binary without debug sections (RelWithDebInfo keeps them in build/release).
set(CPACK_STRIP_FILES TRUE)
# Only kiln's own files: no test or benchmark targets are installed.
include(CPack)

if(KILN_BUILD_TESTS)
  # CI builds the package and installs it into a scratch root (tests/packaging/test_deb.sh).
  add_test(NAME "packaging: deb" COMMAND bash ${PROJECT_SOURCE_DIR}/tests/packaging/test_deb.sh
           ${CMAKE_BINARY_DIR})
  set_tests_properties("packaging: deb" PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77)
endif()
