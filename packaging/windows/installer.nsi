; The dittohead installer for Windows lab PCs (makensis, from packaging/windows/build.py).
;
; Installs for all users into Program Files, with an entry in Apps & features. Lab IT pushes it
; silently with the lab's own settings (docs/admins/windows.md):
;
;   dittohead-setup-VERSION.exe /S [/CONFIG=FILE] [/KNOWNHOSTS=FILE] [/D=FOLDER]
;
; A FILE with spaces is quoted: /CONFIG="C:\lab files\client.toml" (or the whole option).
; /CONFIG and /KNOWNHOSTS name the machine-wide client.toml and the server's pinned host keys;
; without them, files called client.toml and known_hosts beside the installer are taken. Either
; is copied to %PROGRAMDATA%\dittohead\ (where the client looks, docs/collectors/), replacing
; the one there; a file named but missing stops the installation (exit code 2) before anything
; is written. /D (the last option, as NSIS wants it) chooses the folder.
;
; The uninstaller removes the programs, the Start menu entry and the Apps & features entry. It
; leaves %PROGRAMDATA%\dittohead (the machine-wide settings) and every user's own files
; (%APPDATA%\dittohead, %LOCALAPPDATA%\dittohead: settings, what was sent, trusted host keys).

Unicode true
Target amd64-unicode  ; a 64-bit installer for a 64-bit program (and Wine without 32-bit support)
!include "FileFunc.nsh"
!include "LogicLib.nsh"
!include "WordFunc.nsh"

!ifndef VERSION
  !error "makensis -DVERSION=... -DDIST=... -DOUTFILE=..."
!endif

!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\dittohead"

Name "dittohead ${VERSION}"
OutFile "${OUTFILE}"
InstallDir "$PROGRAMFILES64\dittohead"
RequestExecutionLevel admin
SetCompressor /SOLID lzma
ShowInstDetails nevershow
ShowUninstDetails nevershow

Page directory
Page instfiles
UninstPage uninstConfirm
UninstPage instfiles

Var Config
Var KnownHosts

Function .onInit
  SetShellVarContext all  ; Start menu and %PROGRAMDATA% ($APPDATA here) for every user
  SetRegView 64
  ${GetParameters} $R0
  ; A path with spaces comes quoted in one of two ways: /CONFIG="C:\lab files\client.toml" as
  ; typed in a script, or "/CONFIG=C:\lab files\client.toml" as Windows quotes a whole argument
  ; (PowerShell, Python, Wine). GetOptions skips whatever is inside quotes, so it would never
  ; see the second form: it is turned into the first.
  ${WordReplace} $R0 '"/CONFIG=' '/CONFIG="' "+" $R0
  ${WordReplace} $R0 '"/KNOWNHOSTS=' '/KNOWNHOSTS="' "+" $R0
  ClearErrors
  ${GetOptions} $R0 "/CONFIG=" $Config
  ${If} ${Errors}
    StrCpy $Config ""
    ${If} ${FileExists} "$EXEDIR\client.toml"
      StrCpy $Config "$EXEDIR\client.toml"
    ${EndIf}
  ${ElseIfNot} ${FileExists} $Config
    MessageBox MB_OK|MB_ICONSTOP "dittohead: the client.toml given with /CONFIG ($Config) does not exist; nothing was installed." /SD IDOK
    SetErrorLevel 2
    Quit
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/KNOWNHOSTS=" $KnownHosts
  ${If} ${Errors}
    StrCpy $KnownHosts ""
    ${If} ${FileExists} "$EXEDIR\known_hosts"
      StrCpy $KnownHosts "$EXEDIR\known_hosts"
    ${EndIf}
  ${ElseIfNot} ${FileExists} $KnownHosts
    MessageBox MB_OK|MB_ICONSTOP "dittohead: the known_hosts file given with /KNOWNHOSTS ($KnownHosts) does not exist; nothing was installed." /SD IDOK
    SetErrorLevel 2
    Quit
  ${EndIf}
FunctionEnd

Section "dittohead"
  SetOutPath "$INSTDIR"
  File "${DIST}\dittohead.exe"
  File "${DIST}\dittohead-gui.exe"
  ; the window, for every user, under the name collectors look for
  CreateShortcut "$SMPROGRAMS\dittohead.lnk" "$INSTDIR\dittohead-gui.exe" "" "" "" SW_SHOWNORMAL "" "Send study data to the lab's dittohead server"
  ${If} $Config != ""
    CreateDirectory "$APPDATA\dittohead"
    CopyFiles /SILENT "$Config" "$APPDATA\dittohead\client.toml"
  ${EndIf}
  ${If} $KnownHosts != ""
    CreateDirectory "$APPDATA\dittohead"
    CopyFiles /SILENT "$KnownHosts" "$APPDATA\dittohead\known_hosts"
  ${EndIf}
  WriteUninstaller "$INSTDIR\uninstall.exe"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "DisplayName" "dittohead"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "Publisher" "dittohead developers"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKLM "${UNINSTALL_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKLM "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKLM "${UNINSTALL_KEY}" "NoRepair" 1
SectionEnd

Function un.onInit
  SetShellVarContext all
  SetRegView 64
FunctionEnd

Section "Uninstall"
  Delete "$SMPROGRAMS\dittohead.lnk"
  Delete "$INSTDIR\dittohead.exe"
  Delete "$INSTDIR\dittohead-gui.exe"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  DeleteRegKey HKLM "${UNINSTALL_KEY}"
SectionEnd
