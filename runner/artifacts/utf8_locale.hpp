#pragma once
// libarchive converts names between the archive's charset and the current locale's; under the
// "C" locale kiln runs in, any non-ASCII name fails to convert. This switches the calling
// thread (only) to C.UTF-8 for the lifetime of the guard. Internal to runner/artifacts.

#include <locale.h>

namespace kiln::artifacts::detail {

class utf8_locale {
public:
    utf8_locale() {
        loc_ = ::newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(nullptr));
        if (loc_) previous_ = ::uselocale(loc_);
    }
    ~utf8_locale() {
        if (loc_) {
            ::uselocale(previous_);
            ::freelocale(loc_);
        }
    }
    utf8_locale(const utf8_locale&) = delete;
    utf8_locale& operator=(const utf8_locale&) = delete;

private:
    locale_t loc_ = static_cast<locale_t>(nullptr);
    locale_t previous_ = static_cast<locale_t>(nullptr);
};

}  // namespace kiln::artifacts::detail
