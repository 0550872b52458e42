// magnets/version.h: library version, written into every file the toolkit creates.
#pragma once
namespace magnets {
inline constexpr const char* version_string = "0.1.0";
}
